async def profile_missed(cfg, sections):
    return []
