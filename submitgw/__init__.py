"""submitgw: an authenticated SMTP submission gateway."""
