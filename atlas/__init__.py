"""The Atlas boundary: the only package that speaks HTTP to Atlas (client), and a simulator."""
