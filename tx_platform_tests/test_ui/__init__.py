"""Tests of the Dagster UI in a real (headless Debian Chromium) browser."""
