"""Recommendations: sold baskets in, bought-together and similar products out."""
