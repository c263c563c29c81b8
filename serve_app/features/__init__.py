"""The feature contract: one definition, an offline (pandas) and an online (Redis/Lua) implementation."""
