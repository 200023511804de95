"""The resizer: external-resizer's expansion and modification controllers."""
