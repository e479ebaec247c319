"""Infrastructure beneath the service layer: settings, the database and its tables, file storage,
the broker, logs, metrics and thread limits. Imports nothing above it."""
