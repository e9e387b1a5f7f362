"""Markdown tables for the bench scripts (they paste into closing notes as they are)."""


def table(title: str, header: list[str], rows: list[list]) -> None:
    print(f"\n## {title}")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in r) + " |")
