"""Adapters turn other projects' benchmark formats into the task lists evalkit runs."""
