"""Number types shared by the request schemas; strict, so `true` is not a count of 1."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

Count = Annotated[int, Field(strict=True, ge=1)]
"""A whole number >= 1."""
Weight = Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)]
"""A finite number >= 0; NaN and infinities are refused."""
PositiveWeight = Annotated[float, Field(strict=True, gt=0, allow_inf_nan=False)]
"""A finite number > 0."""
Seed = Annotated[int, Field(strict=True, ge=0, le=2**31 - 1)]
"""A seed; the catalog stores it as a 32-bit integer."""
Offset = Annotated[int, Field(ge=0)]
Limit = Annotated[int, Field(ge=1, le=200)]
