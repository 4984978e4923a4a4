"""Rendering of what profile / optimize found: terminal tables, HTML reports, diagrams, comparisons."""
