"""SAG without a host: the equation (`guidance`), the attention capture (`capture`), one generation's
state (`session`), the parameters (`params`) and the mask preview (`preview`). Plain torch, PIL and numpy."""
