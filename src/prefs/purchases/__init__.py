"""Purchases into the locker: a till records what a customer bought, at the customer's say-so."""
