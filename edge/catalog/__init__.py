"""The product catalog: SQLite rows, USearch indexes, ranking of hits into products, imports, calibration."""
