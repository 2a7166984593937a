"""Secrets agents may receive: which ones the configuration grants (`grants`), and how every
secret value is kept out of logs, outputs and the database (`mask`)."""
