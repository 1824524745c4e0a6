"""Generated from ../proto by regenerate.py; do not edit."""
