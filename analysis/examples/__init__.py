"""Built-in example networks."""
