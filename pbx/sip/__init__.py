"""SIP (RFC 3261) in the sans-IO style: messages, transactions, dialogs, auth; transports at the edge."""
