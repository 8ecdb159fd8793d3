import pytest
from netsupport import make_sources


@pytest.fixture
async def sources():
    """Three sources holding key ``k``: real MemoryStores behind FaultyStore."""
    return await make_sources(3)
