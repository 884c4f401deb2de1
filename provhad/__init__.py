"""provhad: keeps an NMS Prime ProvHA slave's provisioning files in step with the database."""

__version__ = "0.1.0"
