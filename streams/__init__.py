"""The bus: typed records, topic names, Kafka clients and endpoints shared by every pedstream process."""
