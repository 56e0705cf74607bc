"""PBX: SIP signalling, registrar, call control, dial plan, storage, configuration, the application."""
