"""Load test: the till lookup dominates (card, and checkout code); self-service, partner systems,
customers reordering through a partner or from a store, and store staff working their store's
queue mixed in.

    uv run locust -f loadtests/locustfile.py --headless -u 40 -r 10 -t 2m \
        --host http://127.0.0.1:8000 --seed-file loadtests/results/seed.json \
        --csv loadtests/results/locust --max-fail-ratio 0 --p95-ms 250 --p99-ms 1000

Needs the JSON written by loadtests/seed.py (till and partner keys, how seeded cards and subjects
are made, customers who granted a partner, the dev issuer's key to sign customer tokens). Thresholds decide the exit code (0 when every one
holds); each also reads an environment variable (LOCUST_MAX_FAIL_RATIO, LOCUST_P95_MS, ...).
Run one locust process: unknown-card lookups are paced here under the server's miss throttle.
"""

from __future__ import annotations

import itertools
import json
import random
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any
from uuid import uuid4

from locust import HttpUser, events, task
from locust.env import Environment

SEEDED: dict[str, Any] = {}
PREFERENCE_FIELDS = ["product", "attributes", "note"]
TEMPORARY_SKU = "LT-0001"  # the preference CustomerUser adds and deletes again: never reordered
LIVE = ("requested", "accepted")  # reorder states a partner still acts on
NOT_FOUND = "No customer preferences can be shown for this card or code."  # the till's one 404


@events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    parser.add_argument(
        "--seed-file",
        env_var="LOCUST_SEED_FILE",
        default="loadtests/results/seed.json",
        help="JSON written by loadtests/seed.py",
    )
    parser.add_argument(
        "--max-fail-ratio",
        env_var="LOCUST_MAX_FAIL_RATIO",
        type=float,
        default=0.0,
        help="largest failure ratio that still passes",
    )
    parser.add_argument(
        "--p95-ms",
        env_var="LOCUST_P95_MS",
        type=float,
        default=500.0,
        help="largest p95 response time (all requests) that still passes",
    )
    parser.add_argument(
        "--p99-ms",
        env_var="LOCUST_P99_MS",
        type=float,
        default=1500.0,
        help="largest p99 response time (all requests) that still passes",
    )
    parser.add_argument(
        "--think-time",
        env_var="LOCUST_THINK_TIME",
        type=float,
        default=0.5,
        help="each user waits up to this many seconds between tasks",
    )
    parser.add_argument(
        "--misses-per-key",
        env_var="LOCUST_MISSES_PER_KEY",
        type=int,
        default=20,
        help="unknown-card lookups per till key per minute (server throttles at 30)",
    )
    parser.add_argument(
        "--misses-per-store",
        env_var="LOCUST_MISSES_PER_STORE",
        type=int,
        default=80,
        help="unknown-card lookups per store per minute (server throttles at 120)",
    )


class MissBudget:
    """Keeps deliberate misses under the server's per-key and per-store throttle (per minute)."""

    def __init__(self, per_key: int, per_store: int) -> None:
        self.limits = {"key": per_key, "store": per_store}
        self.sent: dict[tuple[str, str], deque[float]] = {}
        self.lock = threading.Lock()

    def take(self, key: str, store: str) -> bool:
        now = time.monotonic()
        with self.lock:
            windows = [
                self.sent.setdefault(("key", key), deque()),
                self.sent.setdefault(("store", store), deque()),
            ]
            for window in windows:
                while window and now - window[0] > 61:
                    window.popleft()
            if len(windows[0]) >= self.limits["key"] or len(windows[1]) >= self.limits["store"]:
                return False
            for window in windows:
                window.append(now)
            return True


class Claims:
    """Which user moves which reorder on: the first PartnerUser to see it in its feed (or
    StoreStaffUser to see it in a state in its queue), so users sharing a partner or a store
    never race each other's status changes."""

    def __init__(self) -> None:
        self.owned: set[str] = set()
        self.lock = threading.Lock()

    def take(self, reorder_id: str) -> bool:
        with self.lock:
            if reorder_id in self.owned:
                return False
            self.owned.add(reorder_id)
            return True


@events.init.add_listener
def _load_seed(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if options is None:
        return
    path = Path(options.seed_file)
    if not path.exists():
        raise SystemExit(
            f"no seed file at {path}: run loadtests/seed.py first (or pass --seed-file)"
        )
    SEEDED.update(json.loads(path.read_text()))
    key_path = Path(SEEDED["dev_issuer_key"])
    if not key_path.exists():
        raise SystemExit(f"the dev issuer key {key_path} is missing: run locust where the seed ran")
    from prefs.auth import DevIssuer

    SEEDED["issuer"] = DevIssuer(key_path)
    SEEDED["budget"] = MissBudget(options.misses_per_key, options.misses_per_store)
    subjects = [
        (run["run"], i) for run in SEEDED["runs"] for i in range(min(run["customers"], 5000))
    ]
    random.shuffle(subjects)
    SEEDED["own_subjects"] = itertools.cycle(
        subjects
    )  # a customer user keeps one subject to itself
    SEEDED["claims"] = Claims()
    SEEDED["stores"] = sorted({till["store"] for till in SEEDED["tills"]})
    SEEDED["placed_at"] = {}  # reorder id → the store a StoreShopperUser placed it at
    SEEDED["partners"] = SEEDED.get("partners") or []
    SEEDED["next_partner"] = itertools.cycle(SEEDED["partners"])  # users take partners in turn
    SEEDED["partner_grants"] = SEEDED.get("sample", {}).get("partner_grants") or []
    SEEDED["has_preferences"] = all(run["preferences"] > 0 for run in SEEDED["runs"])
    # A seed JSON from before partners were seeded: run without the users that need them.
    unusable = [
        user
        for user in environment.user_classes
        if not all(SEEDED.get(need) for need in getattr(user, "needs", ()))
    ]
    if unusable:
        environment.user_classes[:] = [u for u in environment.user_classes if u not in unusable]
        names = ", ".join(u.__name__ for u in unusable)
        print(f"{path} names no partners or partner grants: running without {names}")


def random_customer() -> tuple[int, int]:
    """A seeded (run, index), uniformly over every seeded customer."""
    runs = SEEDED["runs"]
    run = random.choices(runs, weights=[r["customers"] for r in runs])[0]
    return run["run"], random.randrange(run["customers"])


def card_of(run: int, index: int) -> str:
    card: str = SEEDED["card_format"].format(run=run, index=index)
    if random.random() < 0.2:  # tills send what the scanner or the cashier typed
        return " ".join(card[i : i + 4] for i in range(0, len(card), 4))
    return card


def subject_of(run: int, index: int) -> str:
    subject: str = SEEDED["subject_format"].format(run=run, index=index)
    return subject


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def expect(response: Any, status: int) -> Any:
    """The JSON body when the answer has ``status``; otherwise marks a failure, returns None."""
    if response.status_code != status:
        response.failure(f"expected {status}, got {response.status_code}: {response.text[:200]}")
        return None
    return response.json()


def reorderable(preferences: list[dict[str, Any]]) -> list[str]:
    """Ids of the preferences worth reordering (never the load test's temporary one)."""
    return [p["id"] for p in preferences if p.get("product", {}).get("sku") != TEMPORARY_SKU]


def check_replay(response: Any, first: dict[str, Any]) -> None:
    """A replayed Idempotency-Key: the first answer again, flagged as a replay."""
    body = expect(response, 201)
    if body is None:
        return
    if response.headers.get("Idempotent-Replayed") != "true":
        response.failure("a replayed Idempotency-Key did not answer Idempotent-Replayed: true")
    elif body != first:
        response.failure(f"a replay answered {body['id']}, the first answer was {first['id']}")
    else:
        response.success()


def check_lookup(response: Any, via: str) -> None:
    """A 200 with ranked preferences, disclosed through ``via``; anything else fails."""
    body = expect(response, 200)
    if body is None:
        return
    preferences = body.get("preferences") or []
    if body.get("via") != via or not preferences or not body.get("disclosure_id"):
        response.failure(f"unexpected lookup body: {response.text[:200]}")
    elif [p["rank"] for p in preferences] != sorted(p["rank"] for p in preferences):
        response.failure("preferences are not in rank order")
    else:
        response.success()


class Till(HttpUser):
    """A store till: one of the seeded till keys, and its store."""

    abstract = True

    def wait_time(self) -> float:  # type: ignore[override]
        return random.uniform(0, self.environment.parsed_options.think_time)

    def on_start(self) -> None:
        till = random.choice(SEEDED["tills"])
        self.key, self.store = till["key"], till["store"]
        self.headers = bearer(self.key)


class TillUser(Till):
    """A store till looking customers up by loyalty card, now and then a card nobody holds."""

    weight = 8

    @task(30)
    def lookup_by_card(self) -> None:
        with self.client.post(
            "/v1/pos/lookup",
            json={"card": card_of(*random_customer())},
            headers=self.headers,
            name="till: lookup by card",
            catch_response=True,
        ) as response:
            check_lookup(response, "card")

    @task(1)
    def lookup_unknown_card(self) -> None:
        if not SEEDED["budget"].take(self.key, self.store):
            self.lookup_by_card()
            return
        card = SEEDED["unknown_card_prefix"] + f"{random.randrange(10**12):012d}"
        with self.client.post(
            "/v1/pos/lookup",
            json={"card": card},
            headers=self.headers,
            name="till: lookup unknown card (404 expected)",
            catch_response=True,
        ) as response:
            if response.status_code == 404 and response.headers.get("content-type", "").startswith(
                "application/problem+json"
            ):
                response.success()
            else:
                response.failure(f"expected 404, got {response.status_code}")


class CheckoutCodeUser(HttpUser):
    """A customer makes a checkout code on the phone; the till looks it up."""

    weight = 2

    def wait_time(self) -> float:  # type: ignore[override]
        return random.uniform(0, self.environment.parsed_options.think_time)

    @task
    def checkout_with_code(self) -> None:
        token = SEEDED["issuer"].mint(subject_of(*random_customer()))
        fields = random.choice([["product", "attributes"], PREFERENCE_FIELDS, ["attributes"]])
        with self.client.post(
            "/v1/me/checkout-codes",
            json={"fields": fields},
            headers=bearer(token),
            name="customer: create checkout code",
            catch_response=True,
        ) as response:
            if response.status_code != 201:
                response.failure(f"expected 201, got {response.status_code}: {response.text[:200]}")
                return
            code = response.json()["code"]
            response.success()
        till = random.choice(SEEDED["tills"])
        with self.client.post(
            "/v1/pos/lookup",
            json={"code": code},
            headers=bearer(till["key"]),
            name="till: lookup by code",
            catch_response=True,
        ) as lookup:
            check_lookup(lookup, "code")


PURCHASE_SKUS = [f"TRS-{n:03d}{v:02d}" for n in range(5) for v in range(0, 100, 7)]


def purchasing_customer() -> tuple[int, int] | None:
    """A seeded (run, index) whose customer lets tills add what they buy; None when no run
    seeded such customers (a seed JSON from before purchases)."""
    runs = [r for r in SEEDED["runs"] if r.get("purchases_every")]
    if not runs:
        return None
    run = random.choices(runs, weights=[r["customers"] for r in runs])[0]
    every = run["purchases_every"]
    return run["run"], random.randrange(0, run["customers"], every)


def sale(items: int = 1) -> list[dict[str, Any]]:
    """What a till rang up: a few trousers in a few sizes (so repeats count again)."""
    return [
        {
            "sku": random.choice(PURCHASE_SKUS),
            "attributes": {"waist": random.choice(["32", "34"]), "leg": "32"},
            "quantity": random.randint(1, 2),
        }
        for _ in range(items)
    ]


def check_counts(response: Any, items: int) -> dict[str, Any] | None:
    """A 200 whose counts account for every item, and nothing else about the locker."""
    body = expect(response, 200)
    if body is None:
        return None
    if set(body) != {"added", "updated", "skipped"}:
        response.failure(f"a purchase answer says more than counts: {response.text[:200]}")
    elif body["added"] + body["updated"] + body["skipped"] != items:
        response.failure(f"counts {body} do not add up to {items} items")
    else:
        response.success()
        return dict(body)
    return None


class PurchaseTillUser(Till):
    """A till recording what customers bought: by card for customers who let tills add their
    purchases, by a keep-purchases checkout code, a retried request now and then (answered once),
    and a card whose customer never agreed (the lookup's 404)."""

    weight = 2

    def _post(self, body: dict[str, Any], key: str, name: str) -> Any:
        return self.client.post(
            "/v1/pos/purchases",
            json=body,
            headers={**self.headers, "Idempotency-Key": key},
            name=name,
            catch_response=True,
        )

    @task(10)
    def purchase_by_card(self) -> None:
        customer = purchasing_customer()
        if customer is None:
            return
        items = sale(random.choice([1, 1, 2, 3]))
        body, key = {"card": card_of(*customer), "items": items}, str(uuid4())
        with self._post(body, key, "till: record purchases by card") as response:
            first = check_counts(response, len(items))
        if first is None or random.random() >= 0.1:
            return
        with self._post(body, key, "till: record purchases, retried (replayed)") as replay:
            again = expect(replay, 200)
            if again is None:
                return
            if replay.headers.get("Idempotent-Replayed") != "true" or again != first:
                replay.failure(f"a retry was not the first answer replayed: {replay.text[:200]}")
            else:
                replay.success()

    @task(2)
    def purchase_by_keep_code(self) -> None:
        token = SEEDED["issuer"].mint(subject_of(*random_customer()))
        with self.client.post(
            "/v1/me/checkout-codes",
            json={"fields": ["product"], "keep_purchases": True},
            headers=bearer(token),
            name="customer: create keep-purchases code",
            catch_response=True,
        ) as response:
            made = expect(response, 201)
            if made is None:
                return
            response.success()
        items = sale()
        body = {"code": made["code"], "items": items}
        with self._post(body, str(uuid4()), "till: record purchases by code") as response:
            check_counts(response, len(items))
        # the code kept this visit's purchases once; a second sale with it is the one 404
        if not SEEDED["budget"].take(self.key, self.store):
            return
        with self._post(body, str(uuid4()), "till: code used twice (404 expected)") as again:
            if again.status_code == 404:
                again.success()
            else:
                again.failure(f"expected 404, got {again.status_code}")

    @task(1)
    def purchase_without_consent(self) -> None:
        customer = purchasing_customer()
        if customer is None or not SEEDED["budget"].take(self.key, self.store):
            return
        run, index = customer
        body = {"card": card_of(run, index + 1), "items": sale()}  # odd: never agreed
        with self._post(body, str(uuid4()), "till: purchases without consent (404 expected)") as r:
            if r.status_code == 404 and r.json().get("detail") == NOT_FOUND:
                r.success()
            else:
                r.failure(f"expected the lookup's 404, got {r.status_code}: {r.text[:200]}")


class CustomerUser(HttpUser):
    """A customer on the self-service page: reads everything, edits notes, re-grants the till."""

    weight = 2

    def wait_time(self) -> float:  # type: ignore[override]
        return random.uniform(0, self.environment.parsed_options.think_time * 2)

    def on_start(self) -> None:
        self.headers = bearer(SEEDED["issuer"].mint(subject_of(*next(SEEDED["own_subjects"]))))

    def _get(self, path: str, name: str) -> Any:
        with self.client.get(
            path, headers=self.headers, name=name, catch_response=True
        ) as response:
            return expect(response, 200)

    @task(4)
    def read_preferences(self) -> None:
        self._get("/v1/me/preferences", "customer: list preferences")

    @task(2)
    def read_profile_and_consents(self) -> None:
        self._get("/v1/me", "customer: profile")
        self._get("/v1/me/consents", "customer: consents")

    @task(2)
    def read_access_log(self) -> None:
        self._get("/v1/me/access-log?limit=20", "customer: access log")

    @task(2)
    def edit_note(self) -> None:
        listing = self._get("/v1/me/preferences", "customer: list preferences")
        if not listing or not listing["items"]:
            return
        chosen = random.choice(listing["items"])
        note = random.choice(["Still the best fit.", "Ask about the new colour.", None])
        with self.client.patch(
            f"/v1/me/preferences/{chosen['id']}",
            json={"note": note},
            headers={**self.headers, "If-Match": f'"{chosen["version"]}"'},
            name="customer: edit note",
            catch_response=True,
        ) as response:
            expect(response, 200)

    @task(1)
    def add_and_remove_preference(self) -> None:
        body = {
            "product": {"sku": "LT-0001", "name": "Load-test Socks", "category": "socks"},
            "attributes": {"size": random.choice(["39-42", "43-46"])},
            "note": "temporary",
        }
        with self.client.post(
            "/v1/me/preferences",
            json=body,
            headers=self.headers,
            name="customer: add preference",
            catch_response=True,
        ) as response:
            created = expect(response, 201)
            if created is None:
                return
        with self.client.delete(
            f"/v1/me/preferences/{created['id']}",
            headers={**self.headers, "If-Match": f'"{created["version"]}"'},
            name="customer: delete preference",
            catch_response=True,
        ) as response:
            if response.status_code == 204:
                response.success()
            else:
                response.failure(f"expected 204, got {response.status_code}: {response.text[:200]}")

    @task(1)
    def regrant_till(self) -> None:
        with self.client.put(
            "/v1/me/consents/pos",
            json={"fields": PREFERENCE_FIELDS},
            headers=self.headers,
            name="customer: grant pos consent",
            catch_response=True,
        ) as response:
            if (
                response.status_code == 200
                and response.json()["receipt"]["state"] == "ConsentGiven"
            ):
                response.success()
            else:
                response.failure(f"expected 200, got {response.status_code}: {response.text[:200]}")


class PartnerShopperUser(HttpUser):
    """A customer who granted a partner reorders a preference through it (the partner's feed
    traffic), now and then sending the same Idempotency-Key again, and reads their reorders."""

    weight = 1
    needs = ("partner_grants",)  # seed JSON entries this user cannot do without

    def wait_time(self) -> float:  # type: ignore[override]
        return random.uniform(0, self.environment.parsed_options.think_time * 2)

    def on_start(self) -> None:
        self.last: tuple[str, str, dict[str, Any], dict[str, Any], dict[str, str]] | None = None

    @task(4)
    def reorder_through_partner(self) -> None:
        if self.last is not None and random.random() < 0.1:
            path, key, body, first, headers = self.last
            with self.client.post(
                path,
                json=body,
                headers={**headers, "Idempotency-Key": key},
                name="customer: replay partner reorder (Idempotency-Key)",
                catch_response=True,
            ) as response:
                check_replay(response, first)
            return
        grant = random.choice(SEEDED["partner_grants"])
        headers = bearer(SEEDED["issuer"].mint(grant["subject"]))
        with self.client.get(
            "/v1/me/preferences",
            headers=headers,
            name="customer: list preferences",
            catch_response=True,
        ) as response:
            listing = expect(response, 200)
            if listing is None:
                return
            choices = reorderable(listing["items"])
            if not choices and SEEDED["has_preferences"]:
                response.failure("a seeded customer has no preference to reorder")
                return
            response.success()
        if not choices:
            return
        path = f"/v1/me/preferences/{random.choice(choices)}/reorders"
        fulfiller = f"partner:{grant['partner']}"
        body = {"quantity": random.randint(1, 3), "fulfiller": fulfiller}
        key = str(uuid4())
        with self.client.post(
            path,
            json=body,
            headers={**headers, "Idempotency-Key": key},
            name="customer: reorder through partner",
            catch_response=True,
        ) as response:
            made = expect(response, 201)
            if made is None:
                return
            if made["fulfiller"] != fulfiller or made["state"] != "requested" or not made["item"]:
                response.failure(f"unexpected reorder: {response.text[:200]}")
                return
            response.success()
            self.last = (path, key, body, made, headers)

    @task(1)
    def read_reorders(self) -> None:
        grant = random.choice(SEEDED["partner_grants"])
        with self.client.get(
            "/v1/me/reorders?limit=20",
            headers=bearer(SEEDED["issuer"].mint(grant["subject"])),
            name="customer: list reorders",
            catch_response=True,
        ) as response:
            if expect(response, 200) is not None:
                response.success()


class PartnerUser(HttpUser):
    """A partner system (a made-to-order tailor): polls its reorder feed with its cursor, moves
    the reorders it took on (requested → accepted → fulfilled, some declined), reads consenting
    customers' preferences (by the ids only it is shown) and proposes reorders for them under an
    Idempotency-Key (they wait for the customer; a few at a time, so some are refused 409)."""

    weight = 1
    needs = ("partners",)

    def wait_time(self) -> float:  # type: ignore[override]
        return random.uniform(0, self.environment.parsed_options.think_time)

    def on_start(self) -> None:
        partner = next(SEEDED["next_partner"])
        self.partner = partner["id"]
        self.headers = bearer(partner["key"])
        self.cursor: str | None = None
        self.seen: set[str] = set()  # every reorder id this user's feed has shown
        self.work: deque[tuple[str, str]] = deque()  # (reorder id, state) this user moves on
        self.refs = [g["ref"] for g in SEEDED["partner_grants"] if g["partner"] == self.partner]
        self.known = set(self.refs)
        self.shelf: dict[str, list[str]] = {}  # ref → reorderable preference ids
        self.last: tuple[str, dict[str, Any], dict[str, Any]] | None = None

    @task(4)
    def poll_feed(self) -> None:
        params = {"limit": "50"} if self.cursor is None else {"limit": "50", "after": self.cursor}
        with self.client.get(
            "/v1/partner/reorders",
            params=params,
            headers=self.headers,
            name="partner: poll feed",
            catch_response=True,
        ) as response:
            page = expect(response, 200)
            if page is None:
                return
            items = page["items"]
            twice = [item["id"] for item in items if item["id"] in self.seen]
            hollow = [item["id"] for item in items if item["state"] in LIVE and not item["item"]]
            for item in items:
                self.seen.add(item["id"])
                if item["state"] in LIVE and SEEDED["claims"].take(item["id"]):
                    self.work.append((item["id"], item["state"]))
                if item["customer"] not in self.known and item["customer"] != "erased":
                    self.known.add(item["customer"])  # refs learnt from the feed
                    self.refs.append(item["customer"])
            self.cursor = page["next"] or self.cursor
            if twice:
                response.failure(f"the feed showed {len(twice)} reorder(s) again: {twice[:3]}")
            elif hollow:
                response.failure(f"live reorder(s) without their item: {hollow[:3]}")
            elif not page["next"]:
                response.failure("the feed answered without a cursor")
            else:
                response.success()

    @task(5)
    def move_reorder(self) -> None:
        if not self.work:
            self.poll_feed()  # nothing to move on: see whether anything new arrived
            return
        reorder_id, state = self.work.popleft()
        if state == "requested":
            target = "declined" if random.random() < 0.15 else "accepted"
        else:
            target = "declined" if random.random() < 0.05 else "fulfilled"
        if not self._set_status(reorder_id, target, "partner: set reorder status"):
            return
        if random.random() < 0.1:  # the partner's system retries: the same state is a no-op
            self._set_status(reorder_id, target, "partner: repeat reorder status (no-op)")
        if target == "accepted":
            self.work.append((reorder_id, target))

    def _set_status(self, reorder_id: str, target: str, name: str) -> bool:
        with self.client.post(
            f"/v1/partner/reorders/{reorder_id}/status",
            json={"state": target},
            headers=self.headers,
            name=name,
            catch_response=True,
        ) as response:
            moved = expect(response, 200)
            if moved is None:
                return False
            # accepted: what fulfilling it needs, as the feed shows it; finished: no details
            if (
                moved["id"] != reorder_id
                or moved["state"] != target
                or "previous_state" not in moved
                or (moved["item"] is not None) != (target == "accepted")
            ):
                response.failure(f"unexpected status answer: {response.text[:200]}")
                return False
            response.success()
            return True

    @task(3)
    def read_customer(self) -> None:
        if self.refs:
            self._read(random.choice(self.refs))

    def _read(self, ref: str) -> list[str]:
        with self.client.get(
            f"/v1/partner/customers/{ref}/preferences",
            headers=self.headers,
            name="partner: read customer preferences",
            catch_response=True,
        ) as response:
            page = expect(response, 200)
            if page is None:
                return []
            shown = page["items"]
            if (not shown and SEEDED["has_preferences"]) or any(
                "product" not in p or "attributes" not in p or "note" not in p for p in shown
            ):
                response.failure(f"granted preferences missing: {response.text[:200]}")
                return []
            if [p["rank"] for p in shown] != sorted(p["rank"] for p in shown):
                response.failure("preferences are not in rank order")
                return []
            response.success()
            self.shelf[ref] = reorderable(shown)
            return self.shelf[ref]

    @task(3)
    def place_reorder(self) -> None:
        if self.last is not None and random.random() < 0.15:
            key, body, first = self.last
            with self.client.post(
                "/v1/partner/reorders",
                json=body,
                headers={**self.headers, "Idempotency-Key": key},
                name="partner: replay reorder (Idempotency-Key)",
                catch_response=True,
            ) as response:
                check_replay(response, first)
            return
        if not self.refs:
            return
        ref = random.choice(self.refs)
        choices = self.shelf.get(ref) or self._read(ref)
        if not choices:
            return
        body = {"customer": ref, "preference": random.choice(choices), "quantity": 1}
        key = str(uuid4())
        with self.client.post(
            "/v1/partner/reorders",
            json=body,
            headers={**self.headers, "Idempotency-Key": key},
            name="partner: place reorder",
            catch_response=True,
        ) as response:
            if response.status_code == 409 and "limit-reached" in response.text:
                response.success()  # enough of its proposals wait for this customer's answer
                return
            made = expect(response, 201)
            if made is None:
                return
            if (
                made["customer"] != ref
                or made["origin"] != "partner"
                or made["state"] != "proposed"
                or made["preference_id"] != body["preference"]
            ):
                response.failure(f"unexpected reorder: {response.text[:200]}")
                return
            response.success()
            self.last = (key, body, made)


STORE_TO_DO = ("requested", "accepted", "ready")  # a store sees the item while it has these to do
STORE_NEXT = {"requested": "accepted", "accepted": "ready", "ready": "collected"}


class StoreShopperUser(HttpUser):
    """A customer reordering a preference from one of the seeded stores, to collect it there;
    now and then cancelling it again (refused once the store accepted it)."""

    weight = 1

    def wait_time(self) -> float:  # type: ignore[override]
        return random.uniform(0, self.environment.parsed_options.think_time * 2)

    @task(4)
    def reorder_from_a_store(self) -> None:
        run, index = random_customer()
        headers = bearer(SEEDED["issuer"].mint(subject_of(run, index)))
        with self.client.get(
            "/v1/me/preferences", headers=headers, name="customer: list preferences",
            catch_response=True,
        ) as response:  # fmt: skip
            listing = expect(response, 200)
            if listing is None:
                return
            response.success()
        choices = reorderable(listing["items"])
        if not choices:
            return
        store = random.choice(SEEDED["stores"])
        body = {"quantity": random.randint(1, 3), "fulfiller": f"store:{store}"}
        with self.client.post(
            f"/v1/me/preferences/{random.choice(choices)}/reorders",
            json=body,
            headers={**headers, "Idempotency-Key": str(uuid4())},
            name="customer: reorder from a store",
            catch_response=True,
        ) as response:
            if response.status_code == 409 and "limit-reached" in response.text:
                response.success()  # this customer has enough store reorders waiting already
                return
            made = expect(response, 201)
            if made is None:
                return
            if (
                made["fulfiller"] != body["fulfiller"]
                or (made.get("store") or {}).get("id") != store
                or made["state"] != "requested"
                or not made["item"]
            ):
                response.failure(f"unexpected reorder: {response.text[:200]}")
                return
            response.success()
        SEEDED["placed_at"][made["id"]] = store
        if random.random() < 0.2:
            with self.client.post(
                f"/v1/me/reorders/{made['id']}/cancel",
                headers=headers,
                name="customer: cancel store reorder",
                catch_response=True,
            ) as response:
                if response.status_code == 409 and "can no longer be cancelled" in response.text:
                    response.success()  # the store accepted it first: one of the two wins
                    return
                cancelled = expect(response, 200)
                if cancelled is not None and cancelled["state"] != "cancelled":
                    response.failure(f"not cancelled: {response.text[:200]}")
                elif cancelled is not None:
                    response.success()


class StoreStaffUser(Till):
    """Store staff at a till draining their store's queue with its cursor: accepting what
    customers asked for, marking it ready, handing it over (some declined); checking that only
    their store's reorders arrive, each change once, with the item exactly while there is work."""

    weight = 1

    def on_start(self) -> None:
        super().on_start()
        self.cursor: str | None = None
        self.seen: set[tuple[str, str]] = set()
        self.work: deque[tuple[str, str]] = deque()

    @task(3)
    def poll_queue(self) -> None:
        params = {"limit": "50"} if self.cursor is None else {"limit": "50", "after": self.cursor}
        with self.client.get(
            "/v1/pos/reorders", params=params, headers=self.headers,
            name="store: poll queue", catch_response=True,
        ) as response:  # fmt: skip
            page = expect(response, 200)
            if page is None:
                return
            problems = []
            for item in page["items"]:
                change = (item["id"], item["state"])
                placed_at = SEEDED["placed_at"].get(item["id"], self.store)
                if placed_at != self.store:
                    problems.append(
                        f"store {placed_at}'s reorder {item['id']} in {self.store}'s queue"
                    )
                if change in self.seen:
                    problems.append(f"the queue showed {change} again")
                if (item["state"] in STORE_TO_DO) != (item["item"] is not None):
                    problems.append(
                        f"{item['state']} reorder {item['id']} with item {item['item']}"
                    )
                self.seen.add(change)
                if item["state"] in STORE_NEXT and SEEDED["claims"].take(
                    f"{item['id']}:{item['state']}"
                ):
                    self.work.append(change)
            self.cursor = page["next"] or self.cursor
            if not page["next"]:
                problems.append("the queue answered without a cursor")
            if problems:
                response.failure("; ".join(problems[:3]))
            else:
                response.success()

    @task(4)
    def move_reorder(self) -> None:
        if not self.work:
            self.poll_queue()
            return
        reorder_id, state = self.work.popleft()
        target = "declined" if random.random() < 0.05 else STORE_NEXT[state]
        with self.client.post(
            f"/v1/pos/reorders/{reorder_id}/status", json={"state": target}, headers=self.headers,
            name="store: set reorder status", catch_response=True,
        ) as response:  # fmt: skip
            if response.status_code == 409 and "A cancelled reorder" in response.text:
                response.success()  # the customer cancelled it first
                return
            moved = expect(response, 200)
            if moved is None:
                return
            if moved["id"] != reorder_id or moved["state"] != target or moved["item"] is not None:
                response.failure(f"unexpected status answer: {response.text[:200]}")
                return
            response.success()
        if random.random() < 0.1:  # the till retries: the same state is a no-op
            with self.client.post(
                f"/v1/pos/reorders/{reorder_id}/status", json={"state": target},
                headers=self.headers, name="store: repeat reorder status (no-op)",
                catch_response=True,
            ) as response:  # fmt: skip
                again = expect(response, 200)
                if again is not None and again["state"] == target:
                    response.success()
                elif again is not None:
                    response.failure(f"a repeat changed the state: {response.text[:200]}")

    @task(1)
    def move_another_stores_reorder(self) -> None:
        theirs = [i for i, store in list(SEEDED["placed_at"].items())[-200:] if store != self.store]
        if not theirs:
            return
        with self.client.post(
            f"/v1/pos/reorders/{random.choice(theirs)}/status", json={"state": "accepted"},
            headers=self.headers, name="store: move another store's reorder (404)",
            catch_response=True,
        ) as response:  # fmt: skip
            if expect(response, 404) is not None:
                response.success()


@events.quitting.add_listener
def _thresholds(environment: Environment, **_: Any) -> None:
    """Set the exit code from the thresholds, and say which held."""
    options = environment.parsed_options
    total = environment.stats.total
    if options is None:
        return
    p95 = total.get_response_time_percentile(0.95) or 0.0
    p99 = total.get_response_time_percentile(0.99) or 0.0
    checks = [
        ("requests made", total.num_requests, "> 0", total.num_requests > 0),
        (
            "failure ratio",
            round(total.fail_ratio, 4),
            f"<= {options.max_fail_ratio}",
            total.fail_ratio <= options.max_fail_ratio,
        ),
        ("p95 ms", p95, f"<= {options.p95_ms:g}", p95 <= options.p95_ms),
        ("p99 ms", p99, f"<= {options.p99_ms:g}", p99 <= options.p99_ms),
    ]
    for name, value, limit, held in checks:
        print(f"threshold {name:<14} {value!s:>10}  {limit:<10} {'ok' if held else 'FAILED'}")
    environment.process_exit_code = 0 if all(held for *_, held in checks) else 1
