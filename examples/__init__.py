"""Examples of hosts built on polyplug_isolated (see README.md)."""
