FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY concierge concierge
COPY contracts contracts
COPY services services
RUN pip install --no-cache-dir .
ENV CONCIERGE_DATA_DIR=/var/lib/concierge
ENTRYPOINT ["concierge"]
CMD ["up"]
