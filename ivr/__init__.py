"""IVR: flows written as plain async Python against the Call protocol."""
