"""Tests of tx_platform: unit (nothing running), integration and e2e (a real local stack)."""
