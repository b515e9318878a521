"""Pure message code: addresses and IDNA, headers, Received:, DKIM/SPF/DMARC over a resolver.

Nothing in this package does I/O of its own or imports a database or a server module.
"""
