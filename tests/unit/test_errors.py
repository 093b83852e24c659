"""pipeline/errors.py: a URL's credentials never reach what is printed or recorded."""

from pipeline.download import describe
from pipeline.errors import without_credentials


def test_a_mirror_url_with_credentials_is_never_printed_or_recorded(default_params):
    url = "https://reader:s3cret@mirror.example:8443/datasets/mnist.npz"
    assert without_credentials(url) == "https://mirror.example:8443/datasets/mnist.npz"
    params = default_params.download.model_copy(update={"url": url})
    assert "s3cret" not in describe("url", params)
    assert without_credentials(default_params.download.url) == default_params.download.url
