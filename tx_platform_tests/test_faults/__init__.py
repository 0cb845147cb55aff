"""The fault matrix: each fault as a test, ended by the independent audit."""
