"""Host scripts written for polyplug 0.1.3, run unchanged on both runtimes (tests/_dropin.py)."""
