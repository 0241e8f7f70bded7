"""The SQLite connection cache shared with the eve enricher."""
