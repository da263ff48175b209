"""A small Korean and English text fixture written for the tests (no external data)."""

SENTENCES = [
    "오늘은 날씨가 맑고 바람이 조금 분다.",
    "작은 모델을 먼저 학습한 뒤 큰 모델로 키운다.",
    "깊이 확장은 층을 복사해서 위에 쌓는 방법이다.",
    "너비 확장은 기존 뉴런을 복사하고 출력 가중치를 나눈다.",
    "사전 학습된 모델을 재사용하면 계산량을 줄일 수 있다.",
    "한국어 위키 문서로 언어 모델을 학습했다.",
    "검증 손실이 목표 값에 도달하면 학습을 멈춘다.",
    "학생 모델은 교사 모델의 출력 분포를 따라 배운다.",
    "도서관에는 오래된 책과 새 책이 함께 꽂혀 있다.",
    "기차는 아침 일곱 시에 서울역을 출발했다.",
    "The small model is grown into a larger one before training continues.",
    "Function preserving initialization keeps the outputs unchanged.",
]


def documents(n: int = 200) -> list[str]:
    """n pseudo-documents: rotations of the sentences, so every document differs."""
    docs = []
    k = len(SENTENCES)
    for i in range(n):
        docs.append(" ".join(SENTENCES[(i + j * 7) % k] for j in range(3 + i % 4)))
    return docs
