"""Test support: servers, databases and the steps each actor takes (customer, till, partner).

Test modules and conftest.py files import from here; no test imports a conftest.
"""
