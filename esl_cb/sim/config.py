"""What a simulated switch's configuration files would define: the core's limits and global
variables, the user directory, sofia profiles and gateways. Defaults follow FreeSWITCH's vanilla
configuration (users 1000-1019 in the domain $${local_ip_v4}, profiles internal and external),
plus a gateway `pstn` (our default dial template) and the `lab` profile of the captures.

The text of `sofia status ...` and `local_stream show ...` is FreeSWITCH 1.11's (measured).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .sounds import BASE_DIR, SOUNDS_DIR, Sounds

RULE = "=" * 97 + "\n"


@dataclass
class Gateway:
    profile: str
    proxy: str
    up: bool = True


@dataclass
class SwitchConfig:
    hostname: str
    domain: str
    sip_ip: str = "127.0.0.1"
    profiles: dict[str, int] = field(default_factory=lambda: {"internal": 5060, "external": 5080, "lab": 5070})
    gateways: dict[str, Gateway] = field(default_factory=lambda: {"pstn": Gateway("external", "127.0.0.1:5090")})
    users: set[tuple[str, str]] = field(default_factory=set)

    def __post_init__(self) -> None:
        if not self.users:
            self.users = {(str(n), self.domain) for n in range(1000, 1020)}

    # -- global variables ---------------------------------------------------
    def globals(self, sounds: Sounds) -> dict[str, str]:
        return {
            "hostname": self.hostname, "local_ip_v4": self.sip_ip, "base_dir": BASE_DIR,
            "recordings_dir": BASE_DIR + "/var/lib/freeswitch/recordings", "sounds_dir": SOUNDS_DIR,
            "sound_prefix": sounds.prefix, "conf_dir": BASE_DIR + "/etc/freeswitch", "temp_dir": "/tmp",
            "domain": self.domain, "domain_name": self.domain,
        }

    # -- the directory ------------------------------------------------------
    def user_exists(self, arg: str) -> str:
        """api user_exists <key> <user> <domain>: only the key 'id' is simulated."""
        words = arg.split()
        if len(words) < 3 or words[0] != "id":
            return "false"
        return "true" if (words[1], words[2]) in self.users else "false"

    # -- sofia ----------------------------------------------------------------
    def profile_url(self, name: str) -> str:
        return f"sip:mod_sofia@{self.sip_ip}:{self.profiles[name]}"

    def sofia(self, arg: str) -> str:
        words = arg.split()
        if words[:1] != ["status"]:
            return "-ERR not simulated: sofia status [profile NAME|gateway [NAME]]\n"
        if len(words) == 1:
            return self._status()
        if words[1] == "profile" and len(words) > 2:
            return self._profile(words[2])
        if words[1] == "gateway":
            return self._gateway(words[2]) if len(words) > 2 else self._gateways()
        return "-ERR not simulated: sofia status [profile NAME|gateway [NAME]]\n"

    def _status(self) -> str:
        lines = ["%25s\t%s\t%42s\t%s\n" % ("Name", "   Type", "Data", "State"), RULE]
        for name in self.profiles:
            lines.append("%25s\t%s\t%42s\t%s\n" % (name, "profile", self.profile_url(name), "RUNNING (0)"))
            for gw_name, gw in self.gateways.items():
                if gw.profile == name:
                    lines.append("%25s\t%s\t%42s\t%s\n" % (f"{name}::{gw_name}", "gateway",
                                                           f"sip:FreeSWITCH@{gw.proxy}", "NOREG"))
        n = len(self.profiles)
        lines += [RULE, f"{n} profile{'' if n == 1 else 's'} 0 aliases\n"]
        return "".join(lines)

    def _profile(self, name: str) -> str:
        if name not in self.profiles:
            return "Invalid Profile!\n"
        url = self.profile_url(name)
        rows = [("Name", name), ("Domain Name", "N/A"), ("Auto-NAT", "false"), ("DBName", f"sofia_reg_{name}"),
                ("Pres Hosts", ""), ("Dialplan", "XML"), ("Context", "public"), ("Challenge Realm", "auto_to"),
                ("RTP-IP", self.sip_ip), ("SIP-IP", self.sip_ip), ("URL", url),
                ("BIND-URL", f"{url};maddr={self.sip_ip};transport=udp,tcp"), ("CODECS IN", "PCMU,PCMA"),
                ("CODECS OUT", "PCMU,PCMA"), ("TEL-EVENT", "101"), ("DTMF-MODE", "rfc2833"),
                ("CALLS-IN", "0"), ("FAILED-CALLS-IN", "0"), ("CALLS-OUT", "0"), ("FAILED-CALLS-OUT", "0"),
                ("REGISTRATIONS", "0")]
        return RULE + "".join(f"{k:<17}\t{v}\n" for k, v in rows)

    def gateway(self, name: str) -> Gateway | None:
        return self.gateways.get(name.split("::", 1)[-1])

    def _gateway(self, name: str) -> str:
        gw = self.gateway(name)
        if gw is None:
            return "Invalid Gateway!\n"
        short = name.split("::", 1)[-1]
        rows = [("Name", short), ("Profile", gw.profile), ("Scheme", "Digest"), ("Realm", gw.proxy),
                ("Username", "FreeSWITCH"), ("Password", "no"), ("From", f"<sip:FreeSWITCH@{gw.proxy}>"),
                ("Contact", f"<sip:gw+{short}@{self.sip_ip}:{self.profiles.get(gw.profile, 5060)};transport=udp;"
                            f"gw={short}>"),
                ("Exten", "FreeSWITCH"), ("To", f"sip:FreeSWITCH@{gw.proxy}"), ("Proxy", f"sip:{gw.proxy}"),
                ("Context", "public"), ("Expires", "3600"), ("Freq", "3600"), ("Ping", "0"), ("PingFreq", "0"),
                ("PingTime", "0.00"), ("PingState", "0/0/0"), ("State", "NOREG"),
                ("Status", "UP" if gw.up else "DOWN"), ("Uptime", "0s"), ("CallsIN", "0"), ("CallsOUT", "0"),
                ("FailedCallsIN", "0"), ("FailedCallsOUT", "0")]
        return RULE + "".join(f"{k:<8}\t{v}\n" for k, v in rows) + RULE

    def _gateways(self) -> str:
        head = "%25s\t%32s\t%s\t%s\t%s\t%s\n" % ("Profile::Gateway-Name", "Data    ", "State", "Ping Time",
                                                 "IB Calls(F/T)", "OB Calls(F/T)")
        lines = [head, RULE]
        for name, gw in self.gateways.items():
            lines.append("%25s\t%32s\t%s\t%6.2f\t%s\t%s\n" % (f"{gw.profile}::{name}", f"sip:FreeSWITCH@{gw.proxy}",
                                                             "NOREG", 0.0, "0/0", "0/0"))
        n = len(self.gateways)
        lines += [RULE, f"{n} gateway{'' if n == 1 else 's'}: Inbound(Failed/Total): 0/0,"
                        f"Outbound(Failed/Total):0/0\n"]
        return "".join(lines)


def local_stream(sounds: Sounds, arg: str) -> str:
    """api local_stream show [NAME]."""
    words = arg.split()
    if words[:1] != ["show"]:
        return "-USAGE: local_stream show [<name>]\n"
    if len(words) == 1:
        return "".join(f"{name},{location}\n" for name, location in sounds.streams.items())
    name = words[1]
    if name not in sounds.streams:
        return f"-ERR Cannot locate local_stream {name}!\n"
    return (f"{name}\n  location: {sounds.streams[name]}\n  channels: 1\n  rate:     8000\n  interval: 20\n"
            f"  samples:  160\n  prebuf:   65536\n  timer:    soft\n  total:    0\n  shuffle:  false\n"
            f"  ready:    true\n  stopped:  false\n  reloading: false\n")
