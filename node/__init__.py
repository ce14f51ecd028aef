"""Tongyuan (同源): one node program for county, city and province."""

__version__ = "0.1.0"
