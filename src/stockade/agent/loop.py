"""The agent: enroll once, then attest every interval (with jitter) until stopped.

Each attestation is one record on the ``stockade.agent`` logger (``stockade.logs``: text or
one JSON object a line): the node id and name, the result id, status, node state, deadline
and every reason. Every retry is one warning with the error's one-line message, its kind and
the delay, never a traceback: an unreachable verifier, a TLS error, a 4xx or 5xx answer and a
busy TPM are expected. A verifier that is down or answers 5xx is retried with capped
exponential backoff with full jitter (``agent/backoff.py``: a fleet that lost the verifier
together does not come back in lockstep); the AK and node id live in the state directory, so a
restarted agent attests again at once without enrolling.

Released secrets are accepted only under a release statement signed by a pinned verifier
key. The pin is ``--verifier-key`` (an operator-given file: the verifier is authenticated
from the first secret on) or, without it, trust on first use: at enrollment the agent fetches
``GET /v1/keys`` once over the verifier's TLS and saves it (``verifier-keys.pem``); whoever
held that channel then is trusted for good. Either way the pinned file is never replaced.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stockade.agent.backoff import FullJitterBackoff
from stockade.agent.client import (
    VerifierClient,
    VerifierRefused,
    VerifierUnavailable,
    b64,
)
from stockade.agent.membership import Membership, ReleaseRefused
from stockade.agent.metrics import BEAT_SECONDS, AgentTelemetry
from stockade.agent.oci_hook import HookSettings, serving_hook_requests
from stockade.agent.secret_socket import serving_secrets
from stockade.agent.source import NodeSource
from stockade.agent.state import AgentState, Enrolled
from stockade.errors import InputError, StockadeError, TpmUnavailable
from stockade.evidence.credential import CredentialBlob
from stockade.evidence.pcr_selection import PcrSelection
from stockade.evidence.templates import KeyKind
from stockade.logs import fields
from stockade.statements import VerifierKeys
from stockade.verifier_client import VerifierUntrusted

if TYPE_CHECKING:
    from stockade.agent.execution_log import ExecutionLog, TornTail

# A torn tail is a partial record; more than this of it is not needed to name it.
MAX_TORN_TAIL_SENT = 64 * 1024

# Answers that mean the verifier no longer knows this node (or its AK): enroll again.
_REENROLL_STATUSES = frozenset({404})
_REENROLL_CODES = frozenset({"not-found", "ak", "channel-unknown"})


@dataclass(frozen=True)
class AgentConfig:
    verifier: str
    ca: Path | None
    name: str
    source: NodeSource
    state_dir: Path
    interval: float = 30.0
    jitter: float = 3.0
    initial_backoff: float = 0.5
    max_backoff: float = 30.0
    key_kind: KeyKind = KeyKind.ECC
    # Cluster membership: renew the TPM-resident node certificate after every affirming
    # result, fetch these secrets (sealed to the TPM) and deliver them to a tmpfs directory.
    certificates: bool = False
    pki_dir: Path | None = None
    secrets: tuple[str, ...] = ()
    secrets_dir: Path | None = None
    secrets_socket: Path | None = None  # serve the secrets here, unsealed on every read
    # The verifier's statement keys (PEM or JWK set); None: trust on first use (module doc).
    verifier_key: Path | None = None
    # Admit containers for the OCI hook's clients on this socket while the agent runs
    # (agent/oci_hook.py serving_hook_requests), extending this node's TPM and execution log.
    hook_socket: Path | None = None
    hook_settings: HookSettings = field(default_factory=HookSettings)
    # Enroll by the cloud vTPM's AK certificate (stockade.tpm.cloud_ak) instead of the EK's;
    # also done, without this, by a TPM with a cloud AK in NV but no EK certificate.
    ak_from_nv: bool = False
    # The booted release's DSSE envelope (``stockade release sign``), sent with every
    # evidence: a verifier whose policy accepts releases by signer appraises a release it
    # does not list from it. Read once, when first sent (the release booted with the agent).
    release_envelope: Path | None = None

    def admission_settings(self) -> HookSettings:
        """The hook settings, with the TPM and execution log this agent attests."""
        return replace(
            self.hook_settings,
            tcti=self.source.tcti,
            log_path=self.source.execution_log,
            agent_socket=None,
        )


# The largest release envelope the verifier takes (``appraisal.appraise``
# ``MAX_RELEASE_ENVELOPE``, not imported: the agent does not load the appraisal core).
MAX_RELEASE_ENVELOPE = 64 * 1024


def read_release_envelope(path: Path) -> bytes:
    """The release envelope file's bytes; ``InputError`` when unreadable or too large."""
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_RELEASE_ENVELOPE + 1)
    except OSError as error:
        raise InputError(f"--release-envelope {path}: {error.strerror or error}") from None
    if len(raw) > MAX_RELEASE_ENVELOPE:
        raise InputError(
            f"--release-envelope {path}: more than {MAX_RELEASE_ENVELOPE} bytes (a release "
            "envelope is a few KiB)"
        )
    return raw


def _timestamp(text: object) -> float | None:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


_log = logging.getLogger("stockade.agent")


def one_line(error: BaseException) -> str:
    """An error's message on one line (a TLS or HTTP library's may span several)."""
    return " ".join(str(error).split()) or type(error).__name__


def error_kind(error: BaseException) -> str:
    """The ``kind`` of a failed round: a label of ``stockade_agent_errors_total`` and a field
    of its log record (a few fixed words, never a message)."""
    if isinstance(error, VerifierUntrusted):
        return "tls"
    if isinstance(error, VerifierUnavailable):
        return "unreachable" if " answered " not in str(error) else "server-error"
    if isinstance(error, VerifierRefused):
        if error.status == 429:
            return "rate-limited"
        if error.code == "pending":
            return "pending"
        if error.status in _REENROLL_STATUSES or error.code in _REENROLL_CODES:
            return "unknown-node"
        if error.code == "revoked":
            return "revoked"
        return "refused"
    if isinstance(error, TpmUnavailable) or type(error).__module__.startswith("stockade.tpm"):
        return "tpm"
    return "error"


def _shown(value: object) -> str:
    """A field as the ``log=`` callback's line shows it (``key=value``, quoted if need be)."""
    if isinstance(value, str):
        return json.dumps(value) if (not value or any(c in value for c in ' ="')) else value
    return json.dumps(value, separators=(",", ":"), default=str)


@dataclass
class Agent:
    config: AgentConfig
    stop: threading.Event = field(default_factory=threading.Event)
    # Where the agent's lines go: None, the ``stockade.agent`` logger (what `stockade agent run`
    # configures with --log-format); a callable takes each line instead (the message and its
    # fields as key=value): tests read them, `stockade join` silences the agent with it.
    log: Callable[[str], None] | None = None
    # Health (/livez, /readyz) and metrics (/metrics) for the probe listener; every agent has
    # them, served or not.
    telemetry: AgentTelemetry = field(default_factory=AgentTelemetry)
    attestations: int = 0
    # Draws the attestation jitter and the retry delays (one per agent: fleets spread out).
    rng: random.Random = field(default_factory=random.Random)
    # The deadline (epoch seconds) of the last affirming result: delivered secrets are
    # withdrawn once it passes without a new one, e.g. while the verifier is unreachable.
    _affirmed_until: float | None = None
    # The pinned verifier keys, and the PCRs this agent quoted in its last attestation: a
    # released secret must be signed under the one and sealed to (some of) the other.
    _verifier_keys: VerifierKeys | None = None
    _attested: PcrSelection | None = None
    # A torn execution-log tail sent with the evidence in flight: (log, tail).
    _torn: tuple[ExecutionLog, TornTail] | None = None
    # ``config.release_envelope`` as base64, once read.
    _release_envelope: str | None = None

    @property
    def state(self) -> AgentState:
        return AgentState(self.config.state_dir)

    def run(self, max_attestations: int | None = None) -> None:
        """Attest until ``stop`` is set (or ``max_attestations`` answers were received)."""
        config = self.config
        if config.verifier_key is not None or self.state.verifier_keys_path.exists():
            self.verifier_keys(None)  # a key file that is unusable or differs: stop here
        self._release_envelope_part()  # an unreadable or oversized envelope: stop here too
        self._say(
            logging.INFO,
            f"agent {config.name}: {config.source.description}, "
            f"boot log {config.source.event_log}, "
            f"verifier {config.verifier}, every {config.interval:g}s +/- {config.jitter:g}s",
        )
        with contextlib.ExitStack() as stack:
            if config.secrets_socket is not None:
                stack.enter_context(
                    serving_secrets(
                        config.secrets_socket, frozenset(config.secrets), self.membership.unseal
                    )
                )
                self._say(
                    logging.INFO, f"secrets served on {config.secrets_socket} (unsealed per read)"
                )
            if config.hook_socket is not None:
                stack.enter_context(
                    serving_hook_requests(
                        config.hook_socket,
                        config.admission_settings(),
                        on_decision=self.telemetry.metrics.hook_decision,
                    )
                )
                self._say(logging.INFO, f"container admissions served on {config.hook_socket}")
            self._loop(
                stack.enter_context(VerifierClient(config.verifier, config.ca)), max_attestations
            )
        self._say(
            logging.INFO, f"agent {config.name}: stopped after {self.attestations} attestations"
        )

    def _say(self, level: int, message: str, **values: object) -> None:
        """One record: to the ``log`` callable as a line, else to the ``stockade.agent``
        logger with ``values`` as its fields (``None`` values left out)."""
        extra = fields(**values)
        if self.log is not None:
            shown = " ".join(f"{key}={_shown(value)}" for key, value in extra.items())
            self.log(f"{message} {shown}" if shown else message)
            return
        _log.log(level, message, extra=extra)

    def _node_id(self) -> str | None:
        with contextlib.suppress(StockadeError):
            enrolled = self.state.enrolled()
            return enrolled.node_id if enrolled is not None else None
        return None

    def _retry(self, delay: float, error: BaseException, kind: str) -> None:
        """A failed round, to be tried again after ``delay``: one warning, counted."""
        self.telemetry.metrics.error(kind)
        self._say(
            logging.WARNING,
            f"retry in {delay:.3g}s",
            node=self._node_id(),
            kind=kind,
            delay=round(delay, 3),
            error=one_line(error),
        )

    def _wait(self, seconds: float) -> None:
        """Wait ``seconds`` or until stopped, beating ``/livez`` all along: a wait is not a
        hang."""
        deadline = time.monotonic() + seconds
        health = self.telemetry.health
        while not self.stop.is_set():
            health.beat()
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.stop.wait(min(remaining, BEAT_SECONDS)):
                break
        health.beat()

    def _loop(self, client: VerifierClient, max_attestations: int | None) -> None:
        config = self.config
        health = self.telemetry.health
        backoff = FullJitterBackoff(config.initial_backoff, config.max_backoff, self.rng)
        while not self.stop.is_set():
            health.beat()
            if self._affirmed_until is not None and time.time() >= self._affirmed_until:
                self._withdraw("no affirming result since the last one expired")
            try:
                enrolled = self.enrolled_or_enroll(client)
                started = time.monotonic()
                answer = self.attest_once(client, enrolled)
                self._report(enrolled, answer, time.monotonic() - started)
                self._act_on(client, enrolled, answer)
            except VerifierUnavailable as error:
                delay = backoff.next_delay()
                kind = error_kind(error)
                health.ready(False, f"the verifier did not answer ({kind}): {one_line(error)}")
                self._retry(delay, error, kind)
                self._wait(delay)
                continue
            except VerifierRefused as error:
                delay = backoff.next_delay()
                kind = error_kind(error)
                self._refused(error, kind, delay)
                if error.status == 403:  # revoked: nothing it was given may stay usable
                    self._withdraw(f"refused by the verifier ({error.code})")
                # Rate-limited: wait as long as the verifier asks, never less than the backoff.
                self._wait(max(delay, error.retry_after or 0.0))
                continue
            except StockadeError as error:  # TPM or boot log unreadable: may recover
                delay = backoff.next_delay()
                kind = error_kind(error)
                health.ready(False, f"no attestation ({kind}): {one_line(error)}")
                self._retry(delay, error, kind)
                self._wait(delay)
                continue
            backoff.reset()
            self.attestations += 1
            if max_attestations is not None and self.attestations >= max_attestations:
                break
            self._wait(self._next_delay())

    def _refused(self, error: VerifierRefused, kind: str, delay: float) -> None:
        """A 4xx answer: said, counted, and what it means for readiness."""
        config = self.config
        health = self.telemetry.health
        if kind == "unknown-node":
            self.telemetry.metrics.error(kind)
            health.ready(False, f"the verifier does not know this node: enrolling again ({error})")
            self._say(
                logging.WARNING,
                f"the verifier does not know this node ({one_line(error)}); enrolling again",
                node=self._node_id(),
                kind=kind,
            )
            self.state.forget_enrollment()
        elif kind == "pending":
            self.telemetry.metrics.error(kind)
            health.ready(
                False, f"enrolled, waiting for the operator to admit {config.name} (pending)"
            )
            self._say(
                logging.INFO,
                f"waiting for the operator to admit {config.name} "
                f"(stockade nodes approve {config.name}); asking again in {delay:.3g}s",
                node=self._node_id(),
                kind=kind,
                delay=round(delay, 3),
            )
        else:
            if kind == "revoked":
                # The verifier's verdict on the node, not a fault of the agent.
                self.telemetry.metrics.in_state("revoked")
                health.ready(
                    True,
                    f"attesting: the verifier answered, node {config.name} is revoked there "
                    "(the agent works; the node is not trusted)",
                )
            else:
                health.ready(False, f"the verifier refused this agent ({kind}): {error}")
            self._retry(delay, error, kind)

    def _next_delay(self) -> float:
        jitter = self.config.jitter
        return max(0.05, self.config.interval + self.rng.uniform(-jitter, jitter))

    # -- enrollment ----------------------------------------------------------

    def load_or_create_ak(self) -> Any:
        from stockade.tpm.ak import AttestationKey, create_ak
        from stockade.tpm.device import Tpm

        if self.state.has_ak():
            return AttestationKey.load(self.config.state_dir)
        with Tpm(self.config.source.tcti) as tpm:
            ak = create_ak(tpm, self.config.key_kind)
        ak.save(self.config.state_dir)
        return ak

    def enrolled_or_enroll(self, client: VerifierClient) -> Enrolled:
        """The saved enrollment (with its channel key) or a new one; either way ``client``
        signs the node's calls with the channel key from here on."""
        enrolled = self.state.enrolled()
        if enrolled is None or not self.state.channel_key_path.exists():
            enrolled = self.enroll(client)
        self.sign_as_node(client, enrolled)
        return enrolled

    def sign_as_node(self, client: VerifierClient, enrolled: Enrolled) -> None:
        from stockade.agent.channel_key import ChannelSigner

        client.as_node(
            enrolled.node_id, ChannelSigner(self.config.source.tcti, self.state.channel_key_path)
        )

    def enroll(self, client: VerifierClient) -> Enrolled:
        """EK certificate + AK public -> MakeCredential challenge -> activated secret, and the
        channel key the AK certifies over it. A cloud vTPM: ``enroll_by_ak_certificate``."""
        from stockade.tpm.credential import activate_credential
        from stockade.tpm.device import Tpm
        from stockade.tpm.ek import read_endorsement

        if self.uses_cloud_ak():
            return self.enroll_by_ak_certificate(client)
        ak = self.load_or_create_ak()
        with Tpm(self.config.source.tcti) as tpm:
            endorsement = read_endorsement(tpm, ak.ek_kind)
        if endorsement.certificate is None:
            raise StockadeError(f"the TPM has no {ak.ek_kind.value} EK certificate in NV")
        challenge = client.enroll(
            self.config.name,
            endorsement.certificate,
            endorsement.public.marshal_tpm2b(),
            ak.public.marshal_tpm2b(),
        )
        blob = CredentialBlob(challenge.credential_blob, challenge.encrypted_secret)
        with Tpm(self.config.source.tcti) as tpm:
            secret = activate_credential(tpm, ak, blob)
        return self._activate(client, ak, challenge.enrollment_id, secret)

    def uses_cloud_ak(self) -> bool:
        """``--ak-from-nv``, an AK saved from a cloud template, or a TPM with a cloud AK in NV
        and no EK certificate of the AK's kind."""
        from stockade.tpm.ak import AttestationKey
        from stockade.tpm.cloud_ak import cloud_ak_kinds
        from stockade.tpm.device import Tpm
        from stockade.tpm.ek import read_endorsement

        if self.config.ak_from_nv:
            return True
        if self.state.has_ak():
            return AttestationKey.load(self.config.state_dir).primary_template is not None
        with Tpm(self.config.source.tcti) as tpm:
            if not cloud_ak_kinds(tpm):
                return False
            if read_endorsement(tpm, self.config.key_kind).certificate is not None:
                return False
        self._say(
            logging.INFO, "the TPM has a cloud AK certificate in NV and no EK certificate: using it"
        )
        return True

    def enroll_by_ak_certificate(self, client: VerifierClient) -> Enrolled:
        """The cloud vTPM's AK (made from its NV template) and its certificate -> a challenge
        the AK certifies the channel key over."""
        from stockade.tpm.cloud_ak import cloud_ak_kinds, read_cloud_ak
        from stockade.tpm.device import Tpm

        with Tpm(self.config.source.tcti) as tpm:
            kinds = cloud_ak_kinds(tpm)
            kind = self.config.key_kind if self.config.key_kind in kinds else None
            cloud = read_cloud_ak(tpm, kind)
        cloud.ak.save(self.config.state_dir)
        challenge = client.enroll_by_ak_certificate(
            self.config.name, cloud.certificate, cloud.ak.public.marshal_tpm2b()
        )
        return self._activate(client, cloud.ak, challenge.enrollment_id, challenge.challenge)

    def _activate(
        self, client: VerifierClient, ak: Any, enrollment_id: str, secret: bytes
    ) -> Enrolled:
        """Certify a new channel key with ``ak`` over this enrollment and ``secret`` (the
        recovered credential, or the AK-certificate challenge), and pin it."""
        from stockade.agent.channel_key import create_channel_key
        from stockade.tpm.node_key import save_node_key

        channel = create_channel_key(self.config.source.tcti, ak, enrollment_id, secret)
        answer = client.activate(
            enrollment_id,
            secret,
            channel.key.public.marshal_tpm2b(),
            channel.certify_info,
            channel.signature,
        )
        save_node_key(channel.key, self.state.channel_key_path)
        enrolled = Enrolled(str(answer["node_id"]), self.config.name, self.config.verifier)
        self.state.save_enrolled(enrolled)
        state = answer.get("state")
        self._say(
            logging.INFO,
            f"enrolled {self.config.name} as node {enrolled.node_id} ({state})",
            node=enrolled.node_id,
            node_name=self.config.name,
            state=state,
        )
        self.sign_as_node(client, enrolled)
        try:
            self.verifier_keys(client)
        except StockadeError as error:  # tried again before the first secret is accepted
            self._say(logging.WARNING, f"verifier key not pinned: {one_line(error)}")
        return enrolled

    def verifier_keys(self, client: VerifierClient | None) -> VerifierKeys:
        """The verifier keys release statements must verify under: ``--verifier-key`` (pinned
        in the state directory when nothing is, else it must be what is pinned), or the pinned
        file, or (with ``client``) the verifier's ``GET /v1/keys``, pinned now: trust on first
        use, at enrollment or, for a node enrolled before pinning existed, at its first secret.
        Raises ``VerifierKeyMismatch`` when a given key differs from the pinned one."""
        if self._verifier_keys is not None:
            return self._verifier_keys
        path = self.config.verifier_key
        if path is not None:
            keys = self.state.pin_verifier_keys(VerifierKeys.load(path), f"--verifier-key {path}")
        elif (pinned := self.state.pinned_verifier_keys()) is not None:
            keys = pinned
        elif client is None:
            raise StockadeError("no verifier key is pinned yet")
        else:
            where = f"{client.url}/v1/keys"
            fetched = VerifierKeys.parse(json.dumps(client.keys()).encode(), f"GET {where}")
            keys = self.state.pin_verifier_keys(fetched, f"GET {where}")
            self._say(
                logging.INFO,
                f"pinned verifier key {', '.join(k[:16] for k in sorted(keys.keys))} from "
                f"{where} on first use, in {self.state.verifier_keys_path} (--verifier-key pins "
                "a key given by the operator instead)",
            )
        self._verifier_keys = keys
        return keys

    # -- attestation ---------------------------------------------------------

    def attest_once(self, client: VerifierClient, enrolled: Enrolled) -> dict[str, Any]:
        """nonce -> quote of the PCRs the verifier names -> evidence -> its answer.

        When the execution PCR is quoted, the quote and the read of the execution log happen
        under the log's lock, so no container start slips between them (the hook extends and
        appends under the same lock); only records the verifier has not yet appraised are sent.
        """
        from stockade.evidence.execution import EXECUTION_PCR
        from stockade.tpm.ak import AttestationKey
        from stockade.tpm.device import Tpm
        from stockade.tpm.quote import quote

        challenge = client.nonce(enrolled.node_id)
        ak = AttestationKey.load(self.config.state_dir)
        selection = PcrSelection.parse(challenge.pcr_selection)
        event_log = self.config.source.read_event_log()
        body: dict[str, Any] = {}
        self._torn = None
        with contextlib.ExitStack() as stack:
            if any(EXECUTION_PCR in bank.pcrs for bank in selection.banks):
                body.update(self._execution_log_part(stack))
            with Tpm(self.config.source.tcti) as tpm:
                evidence = quote(tpm, ak, selection, challenge.nonce)
        answer = client.evidence(
            enrolled.node_id,
            {
                "nonce": b64(challenge.nonce),
                "quote": b64(evidence.message),
                "signature": b64(evidence.signature),
                "pcrs": evidence.pcr_values.restricted_to(evidence.selection).to_json(),
                "event_log": b64(event_log),
                **body,
                **self._release_envelope_part(),
            },
        )
        self._attested = evidence.selection
        self._set_torn_tail_aside()
        acknowledged = answer.get("execution_log_next")
        if isinstance(acknowledged, int) and acknowledged >= 0:
            self.state.save_execution_log_next(acknowledged)
        return answer

    def _release_envelope_part(self) -> dict[str, Any]:
        """``release_envelope``: the booted release's envelope, read once (at most
        ``MAX_RELEASE_ENVELOPE`` bytes, as the verifier takes)."""
        path = self.config.release_envelope
        if path is None:
            return {}
        if self._release_envelope is None:
            self._release_envelope = b64(read_release_envelope(path))
        return {"release_envelope": self._release_envelope}

    def _execution_log_part(self, stack: contextlib.ExitStack) -> dict[str, Any]:
        """Lock the execution log (held until the quote is taken) and read what the verifier
        has not acknowledged; from record 0 when the log restarted (a new boot).

        A torn tail is sent as what it is: the raw bytes after the complete records, the
        log then sent from record 0 so the verifier can name the file offset. Once the
        verifier has answered, ``_set_torn_tail_aside`` moves it out of the way."""
        from stockade.agent.execution_log import ExecutionLog, RecordsNotInLog

        path = self.config.source.execution_log
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        log = ExecutionLog(path)
        stack.enter_context(log.locked())
        start = self.state.execution_log_next()
        try:
            records, tail = log.read_with_tail(start)
        except RecordsNotInLog:
            start, (records, tail) = 0, log.read_with_tail(0)
        if tail is not None:
            if start:
                start, (records, _) = 0, log.read_with_tail(0)
            self._torn = (log, tail)
            records += tail.data[:MAX_TORN_TAIL_SENT]
        return {"execution_log": b64(records), "execution_log_from": start}

    def _set_torn_tail_aside(self) -> None:
        """After the verifier was told of a torn tail: keep a copy beside the log and
        truncate the log to its complete records, so the hook can append again."""
        torn, self._torn = self._torn, None
        if torn is None:
            return
        log, tail = torn
        aside = log.set_aside(tail)
        self._say(
            logging.WARNING,
            f"execution log {log.path}: {tail.describe()}; reported to the verifier,"
            f" set aside in {aside}",
        )

    @property
    def membership(self) -> Membership:
        config = self.config
        return Membership(
            config.state_dir,
            config.source.tcti,
            pki_dir=config.pki_dir,
            secrets=config.secrets,
            secrets_dir=config.secrets_dir,
            verifier_keys=self._verifier_keys,
            attested=self._attested,
        )

    def _act_on(self, client: VerifierClient, enrolled: Enrolled, answer: dict[str, Any]) -> None:
        """After an affirming result: renew the certificate, refresh the secrets. Otherwise:
        withdraw delivered secrets (the TPM will refuse to unseal them again anyway)."""
        membership = self.membership
        if answer.get("status") != "affirming":
            self._withdraw("node not affirmed")
            return
        self._affirmed_until = _timestamp(answer.get("not_after"))
        metrics = self.telemetry.metrics
        node = enrolled.node_id
        if self.config.certificates:
            try:
                issued = membership.renew_certificate(client, enrolled.node_id)
                self._say(
                    logging.INFO,
                    f"certificate serial={issued.serial} not_after={issued.not_after} "
                    f"file={issued.certificate}",
                    node=node,
                )
            except (VerifierRefused, StockadeError) as error:
                metrics.error("certificate")
                self._say(
                    logging.WARNING,
                    f"certificate not renewed: {one_line(error)}",
                    node=node,
                    kind="certificate",
                )
        for name in self.config.secrets:
            try:
                self.verifier_keys(client)
                membership = self.membership
                accepted = membership.fetch_secret(client, enrolled.node_id, name)
                delivered = membership.deliver(name)
                where = f"delivered to {delivered}" if delivered else "sealed copy kept"
                metrics.secret("released")
                self._say(
                    logging.INFO,
                    f"secret {name}: sealed to {accepted.sealed.selection}, version "
                    f"{accepted.release.version} released by the verifier; {where}",
                    node=node,
                )
            except ReleaseRefused as error:
                metrics.secret("refused")
                metrics.error("secret")
                self._say(
                    logging.WARNING,
                    f"secret {name}: not delivered, nothing kept: {one_line(error)}",
                    node=node,
                    kind="secret",
                )
            except (VerifierRefused, StockadeError) as error:
                metrics.secret("failed")
                metrics.error("secret")
                self._say(
                    logging.WARNING,
                    f"secret {name}: not delivered: {one_line(error)}",
                    node=node,
                    kind="secret",
                )

    def _withdraw(self, why: str) -> None:
        """Remove every delivered secret and sealed copy (fail closed)."""
        self._affirmed_until = None
        for name in self.membership.withdraw():
            self._say(logging.WARNING, f"secret {name}: withdrawn ({why})")

    def _report(self, enrolled: Enrolled, answer: dict[str, Any], seconds: float) -> None:
        """One record per attestation the verifier answered; the verdict in the metrics and,
        whatever it is, this agent ready: it reached the verifier and was judged."""
        reasons = answer.get("reasons") or []
        status, state = str(answer.get("status")), str(answer.get("state"))
        self.telemetry.metrics.attested(status, state, seconds)
        name = enrolled.name
        if status == "affirming":
            reason = f"attesting: node {name} is {state} at the verifier ({status})"
        else:
            reason = (
                f"attesting: node {name} is {state} at the verifier ({status}); the agent "
                "works, the node is not trusted"
            )
        self.telemetry.health.ready(True, reason)
        self._say(
            logging.INFO if status == "affirming" else logging.WARNING,
            "attestation",
            node=enrolled.node_id,
            node_name=name,
            result=answer.get("result_id"),
            status=status,
            state=state,
            not_after=answer.get("not_after"),
            seconds=round(seconds, 3),
            reasons=reasons,
        )
