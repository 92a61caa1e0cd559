"""Test-time patch routing: recognise the shift of each batch and apply the fitting signature."""
