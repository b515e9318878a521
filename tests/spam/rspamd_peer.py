"""A real rspamd (and the redis-server its Bayes classifier keeps its tokens in), started by
the tests on free loopback ports with a config written into a temp dir, offline.

Offline: nothing from /etc/rspamd; only the plugins the tests need (settings, spf, dkim,
dmarc: to show that ours replace theirs); its DNS pointed at a closed port; a three-line
TLD list (the stock one takes ~20 s to compile at every start). GTUBE is built into
rspamd's parser (``reject``); local rules give the other actions:

=======================  ======  ===================
body word                score   action (thresholds)
=======================  ======  ===================
``GREYWORD``             5       ``greylist`` (4)
``SPAMMYWORD``           8       ``add header`` (6)
``SUBJWORD``             11      ``rewrite subject`` (10)
GTUBE                    -       ``reject``
=======================  ======  ===================

Bayes learns after one message of each class (``min_learns = 1``); the controller's
password is ``PASSWORD`` and loopback is not a ``secure_ip``, so the password is checked.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers import free_port, require_tool

PASSWORD = "mailstack-learn"  # rspamd refuses its documented defaults q1/q2 from anywhere
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

LOCAL_RULES = """
local function body_has(word)
  return function(task)
    for _, p in ipairs(task:get_text_parts() or {}) do
      if tostring(p:get_content() or ''):find(word, 1, true) then return true end
    end
    return false
  end
end
rspamd_config.MAILSTACK_TEST_GREY = { callback = body_has('GREYWORD'), score = 5.0 }
rspamd_config.MAILSTACK_TEST_SPAMMY = { callback = body_has('SPAMMYWORD'), score = 8.0 }
rspamd_config.MAILSTACK_TEST_SUBJECT = { callback = body_has('SUBJWORD'), score = 11.0 }
"""

CONFIG = """
options {{
  pidfile = "{d}/rspamd.pid";
  dbdir = "{d}/db";
  url_tld = "{d}/tld.dat";
  dns {{ nameserver = ["127.0.0.1:9"]; timeout = 0.3s; retransmits = 1; }}
  filters = "dkim";
}}
logging {{ type = "file"; filename = "{d}/rspamd.log"; level = "info"; }}
modules {{ path = "{d}/plugins"; }}
lua = "{d}/local.lua";
settings {{}}
spf {{}}
dmarc {{}}
dkim {{}}
actions {{ reject = 15; "rewrite_subject" = 10; "add_header" = 6; greylist = 4; subject = "***SPAM*** %s"; }}
worker "normal" {{ bind_socket = "127.0.0.1:{normal}"; count = 1; }}
worker "controller" {{ bind_socket = "127.0.0.1:{controller}"; count = 1; password = "{password}"; secure_ip = []; }}
classifier "bayes" {{
  backend = "redis"; servers = "127.0.0.1:{redis}"; min_learns = 1; min_token_hits = 1;
  statfile {{ symbol = "BAYES_HAM"; spam = false; }}
  statfile {{ symbol = "BAYES_SPAM"; spam = true; }}
}}
"""


@dataclass
class Rspamd:
    dir: Path
    normal_port: int
    controller_port: int
    redis_port: int
    procs: list[subprocess.Popen[bytes]]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.normal_port}"

    @property
    def controller_url(self) -> str:
        return f"http://127.0.0.1:{self.controller_port}"

    def stat(self) -> dict[str, Any]:
        req = urllib.request.Request(self.controller_url + "/stat", headers={"Password": PASSWORD})
        with urllib.request.urlopen(req, timeout=10) as resp:
            doc: dict[str, Any] = json.load(resp)
        return doc

    def learned(self) -> int:
        """The controller's total of messages learned (immediate; per-class counts lag ~30 s)."""
        return int(self.stat()["learned"])

    def log(self) -> str:
        try:
            return (self.dir / "rspamd.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def start_rspamd(tmp: Path) -> Rspamd:
    rspamd = require_tool("rspamd")
    redis = require_tool("redis-server")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "db").mkdir(exist_ok=True)
    plugins = tmp / "plugins"
    plugins.mkdir(exist_ok=True)
    for name in ("settings.lua", "spf.lua", "dmarc.lua"):
        link = plugins / name
        if not link.exists():
            link.symlink_to(Path("/usr/share/rspamd/plugins") / name)
    (tmp / "tld.dat").write_text("com\norg\nnet\ntest\nexample\n")
    (tmp / "local.lua").write_text(LOCAL_RULES)
    normal, controller, redis_port = free_port(), free_port(), free_port()
    (tmp / "rspamd.conf").write_text(CONFIG.format(d=tmp, normal=normal, controller=controller, redis=redis_port,
                                                  password=PASSWORD))
    procs: list[subprocess.Popen[bytes]] = []
    peer = Rspamd(tmp, normal, controller, redis_port, procs)
    try:
        procs.append(subprocess.Popen(
            [redis, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(tmp)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        procs.append(subprocess.Popen([rspamd, "-c", str(tmp / "rspamd.conf"), "-f", "-i"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 60
        while True:
            try:
                for url in (peer.url, peer.controller_url):
                    with urllib.request.urlopen(url + "/ping", timeout=2) as resp:
                        assert resp.read().strip() == b"pong"
                break
            except OSError:
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    raise RuntimeError(f"rspamd did not start:\n{peer.log()[-3000:]}") from None
                time.sleep(0.1)
    except BaseException:
        peer.stop()
        raise
    return peer
