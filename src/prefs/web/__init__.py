"""The self-service web page, served at / (static assets, no build step)."""
