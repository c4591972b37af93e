"""The differentially private release of demand counts (no SQL, no HTTP).

Each group's count gets independent two-sided geometric noise (the discrete Laplace mechanism).
One customer is counted in at most ``GROUPS_PER_CUSTOMER`` groups, so adding or removing one
customer changes the vector of counts by at most that much in L1: noise of parameter
``epsilon / GROUPS_PER_CUSTOMER`` per group makes the whole release ``epsilon``-differentially
private. The k threshold is applied to the noisy count; a threshold on the true count would
show or hide a group exactly when one customer joins or leaves it.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from typing import Protocol

# A customer counts in the groups of their highest-ranked discontinued preferences, up to this.
GROUPS_PER_CUSTOMER = 2

SECURE_RANDOM = secrets.SystemRandom()  # the operating system's CSPRNG


class Uniform(Protocol):
    def random(self) -> float: ...


def _geometric(alpha: float, rng: Uniform) -> int:
    """P(G = n) = (1 - alpha) * alpha**n, n >= 0 (by inversion of the distribution function)."""
    uniform = 1.0 - rng.random()  # in (0, 1]
    return math.floor(math.log(uniform) / math.log(alpha))


def two_sided_geometric(epsilon: float, rng: Uniform = SECURE_RANDOM) -> int:
    """Noise Z with P(Z = z) proportional to exp(-epsilon * |z|): sensitivity 1, ``epsilon``-DP."""
    alpha = math.exp(-epsilon)
    if alpha == 0.0:
        return 0
    return _geometric(alpha, rng) - _geometric(alpha, rng)


def noisy_release(
    counts: Mapping[bytes, int], *, epsilon: float, k: int, rng: Uniform = SECURE_RANDOM
) -> dict[bytes, int]:
    """The noisy count of each group whose noisy count reaches k (the others are withheld).

    ``counts`` must count each customer in at most ``GROUPS_PER_CUSTOMER`` groups; the release
    is then ``epsilon``-differentially private for groups that exist with or without the
    customer (see ``lone_group_risk`` for a group one customer makes alone).
    """
    per_group = epsilon / GROUPS_PER_CUSTOMER
    noisy = {group: count + two_sided_geometric(per_group, rng) for group, count in counts.items()}
    return {group: count for group, count in noisy.items() if count >= k}


def lone_group_risk(epsilon: float, k: int) -> float:
    """The chance that a group of one customer is released on a day: P(Z >= k - 1)."""
    alpha = math.exp(-epsilon / GROUPS_PER_CUSTOMER)
    return alpha ** (k - 1) / (1 + alpha)
