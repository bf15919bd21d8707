"""Where the tests find the repository and their fixture files, wherever a test file sits below tests/."""
import pathlib

TESTS_DIR = pathlib.Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
TEST_DATA = TESTS_DIR / "data"
