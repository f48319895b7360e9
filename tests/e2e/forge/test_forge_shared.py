"""tests/e2e's host-independent checks, run against the Forge-family webui of this folder's fixtures."""
from e2e.test_e2e_ux import (test_bad_arguments_get_422_naming_the_field,  # noqa: F401
                             test_dict_and_positional_arguments_give_the_same_image, test_png_info_returns_our_keys,
                             test_preview_only_when_asked, test_script_info_lists_the_arguments)
