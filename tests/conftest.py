import os

import pytest

from benchmark.paths import set_offline

set_offline()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Each test gets its own LORAKV_CACHE unless it is a slow test reusing the real one."""
    if "LORAKV_TEST_SHARED_CACHE" not in os.environ:
        monkeypatch.setenv("LORAKV_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def qa_prompt():
    from benchmark.spec import Prompt

    return Prompt(None, "Read the context.\n\nContext:\n{document}\n\nQuestion: {question}", "Answer:")


@pytest.fixture
def document():
    from benchmark.datasets import Document, Question

    text = ("The patient received 40 mg of Velatrixin daily. Dr. Halvorsen noted a creatinine of 1.8 mg/dL. "
            "Maren Oskvik opened a bakery in Tollervik in 1987. Her brother Anders moved to Quillsby. ") * 2
    return Document(
        "d0", text,
        (Question("q0", "Who noted the creatinine?", ("Halvorsen",)), Question("q1", "What dose?", ("40 mg",)),
         Question("q2", "Where is the bakery?", ("Tollervik",))),
        (("Which doctor measured creatinine?", "Halvorsen"), ("How much Velatrixin?", "40 mg"),
         ("Town of the bakery?", "Tollervik")),
    )
