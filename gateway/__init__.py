"""gateway: a metering reverse proxy that sells upstream scraping endpoints by subscription."""

__version__ = "0.1.0"
