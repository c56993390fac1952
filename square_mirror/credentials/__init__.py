"""Sellers' OAuth credentials: encrypted at rest in ``square_private``, refreshed before they expire."""
