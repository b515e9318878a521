"""The ``http`` service: client autoconfiguration (Thunderbird autoconfig, Outlook
Autodiscover) and the MTA-STS policy, on aiohttp.

``documents`` builds what is served (no I/O); ``server`` is the aiohttp application and
the ``start(ctx)`` of ``mailstack serve http``.
"""
