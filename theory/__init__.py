"""Numerical checks of lottery-ticket theory (subset sum, strong-LTH constructions).

Nothing is implemented here yet; see the open issues.
"""
