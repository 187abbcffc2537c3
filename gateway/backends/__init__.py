"""Storage implementations (adapters): each turns the core storage interface into a protocol."""
