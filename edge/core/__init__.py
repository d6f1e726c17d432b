"""What every subsystem shares: settings, the error hierarchy, logging and the small result types."""
