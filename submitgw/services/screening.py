"""Screening a connecting client against the access rules, before it is greeted.

Rules are read from the database on every connection (one small query in a
worker thread), so `submitgw access deny …` applies to the very next
connection on every gateway sharing the database. Reverse DNS is asked only
when no address rule matched and a name or `unknown` rule exists, so a rule set
of addresses alone never waits on DNS.

If the rules cannot be read, the client is told to try again later
(`Unavailable`, `421 4.3.0`): failing open would let a denied client in
whenever the database hiccups.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from submitgw.config import PolicyConfig
from submitgw.errors import Kind, Need, Refusal, Unavailable
from submitgw.rules.access import ClientName, Decision, client_address, decide, needs_name
from submitgw.services import audit
from submitgw.services.dns import ReverseDns
from submitgw.services.offload import offload
from submitgw.store import AccessRuleStore
from submitgw.types import Rule


@dataclass(frozen=True)
class Verdict:
    """A decision with what it was based on; `name` is None when DNS was not asked."""

    decision: Decision
    name: ClientName | None


class ClientScreen:
    """Shared by all sessions of one gateway process."""

    def __init__(
        self,
        rules: AccessRuleStore,
        dns: ReverseDns,
        policy: PolicyConfig,
        recorder: audit.Recorder | None = None,
    ) -> None:
        self._rules = rules
        self._recorder = recorder or audit.Recorder()
        self._dns = dns
        self._policy = policy

    def reconfigure(self, policy: PolicyConfig) -> None:
        """Live reload: the default decision and denial text for the next connections."""
        self._policy = policy

    async def verdict(self, client_ip: str, *, always_resolve: bool = False) -> Verdict:
        """Decide for one client; `always_resolve` looks the name up even when not needed.

        `access check` resolves always, to print the name; the decision is the
        same because address rules outrank every name rule.
        """
        address = client_address(client_ip)
        default = self._policy.default

        def load() -> tuple[list[Rule], Decision]:
            rules = self._rules.rules()
            return rules, decide(address, rules, default)

        # Reading and matching a thousand rules takes milliseconds: not on the event loop.
        rules, by_address = await offload(load, Need.ACCESS_RULES)
        if not always_resolve and (by_address.rule is not None or not needs_name(rules)):
            return Verdict(by_address, None)
        name = await self._dns.lookup(str(address))
        return Verdict(decide(address, rules, default, name), name)

    async def _verdict_or_default(self, client_ip: str) -> Verdict:
        try:
            client_address(client_ip)
        except ValueError:
            # No peer address (the socket had none): no rule can match, the default decides.
            return Verdict(Decision(self._policy.default, None, ()), None)
        return await self.verdict(client_ip)

    async def refusal(self, client_ip: str, session: str) -> Refusal | None:
        """The refusal that replaces the greeting, or None to greet the client.

        Logs one `access` event per connection.
        """
        try:
            verdict = await self._verdict_or_default(client_ip)
        except Exception as exc:
            cause = exc.__cause__ if isinstance(exc, Unavailable) and exc.__cause__ else exc
            self._recorder.emit(
                {
                    "event": "access",
                    "session": session,
                    "client": client_ip,
                    "decision": "error",
                    "reason": f"access rules unavailable: {type(cause).__name__}",
                },
                logging.ERROR,
            )
            return Unavailable(Need.ACCESS_RULES)
        decision, name = verdict.decision, verdict.name
        self._recorder.emit(
            {
                "event": "access",
                "session": session,
                "client": client_ip,
                "decision": decision.action,
                "rule_id": decision.rule.id if decision.rule else None,
                "rule": decision.rule.rule if decision.rule else "policy.default",
                "name": name.name if name else None,
                "dns": name.status if name else "not needed",
            }
        )
        if decision.allowed:
            return None
        return deny_refusal(self._policy)


def deny_refusal(policy: PolicyConfig) -> Refusal:
    """What a denied client gets instead of the greeting: the admin's text, as one printable
    ASCII line (a CR or LF in it would end an SMTP reply early and start another)."""
    text = "".join(c if " " <= c <= "~" else " " for c in policy.deny_message).strip()
    return Refusal(Kind.ACCESS_DENIED, text=text)
