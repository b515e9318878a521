"""SMTP in and out: the MX, submission and LMTP servers, the queue, the outbound client.

What is here, by layer:

- pure protocol rules, no I/O, each with byte-level tests: ``replies`` (named replies),
  ``params`` (MAIL/RCPT arguments and paths), ``data`` (the DATA phase: end of data,
  smuggling, dot-unstuffing, size), ``limits`` (junk command and error counts);
- the servers on aiosmtpd: ``server`` (``BaseSMTP``, the aiosmtpd subclass every service
  runs on, and its connection bookkeeping), ``mx``, ``submission``, ``lmtp`` (each a
  ``BaseSMTP`` subclass plus a policy ``Handler`` whose hooks return replies);
- what happens to an accepted message: ``mda`` (into Maildirs, in process or over LMTP),
  ``queue_store`` / ``queue_runner`` (the persistent queue and its delivery loop),
  ``outbound`` (the SMTP client towards remote MXs), ``bounce`` (DSNs for failures).

Import direction: ``serve`` and ``cli`` import this package; it imports ``delivery``,
``mail`` (pure message code: addresses, headers, DKIM/SPF/DMARC), ``auth``, ``dns``,
``net``, ``maillog``, ``storage`` and ``config``, never ``imap``/``pop3``/``http``. Inside it,
the pure modules import nothing but each other and ``mail``; the servers import them.
(``delivery`` still takes its ``Reply`` from ``replies`` here: the one place the arrow
points back, until replies move below both.)
"""
