"""The `fastbert` command: encode, verify, bench and info (entry point: fastbert.cli.main:main)."""
