"""Off-topic questions (written for this project) put to the system with retrieval: a good reader declines or
answers without inventing a classical source."""

from __future__ import annotations

OFFTOPIC_QUESTIONS: tuple[str, ...] = (
    "汽车发动机的机油多久换一次比较合适？",
    "电动汽车冬天续航为什么会明显下降？",
    "手动挡汽车起步时总是熄火，应该怎么练习？",
    "个人所得税的专项附加扣除包括哪些项目？",
    "小规模纳税人的增值税征收率是多少？",
    "公司注销之前需要办理哪些税务手续？",
    "Python 中列表和元组有什么区别？",
    "如何用 SQL 查询每个部门工资最高的员工？",
    "Git 里 rebase 和 merge 应该怎么选择？",
    "JavaScript 的闭包是什么意思？",
    "足球比赛中越位是怎么判罚的？",
    "篮球三秒违例指的是什么情况？",
    "马拉松比赛前一周应该怎样安排训练量？",
    "网球比赛的计分规则是怎样的？",
    "买房时公积金贷款和商业贷款有什么不同？",
    "股票市盈率高说明了什么？",
    "如何给家里的路由器设置更安全的密码？",
    "手机电池怎样充电才能用得更久？",
    "冰箱冷藏室的温度设置在几度比较合适？",
    "去日本旅游需要办理什么签证？",
    "高铁票改签有哪些规定？",
    "怎样在家里做一份番茄炒蛋？",
    "面包发酵时面团不膨胀是什么原因？",
    "劳动合同到期公司不续签，员工能拿到补偿吗？",
    "租房合同里押金条款应该注意什么？",
    "太阳系里哪颗行星的卫星最多？",
    "光合作用的主要产物是什么？",
    "小学生学习乘法口诀有什么好方法？",
    "如何写一封求职信？",
    "围棋中的“打劫”是什么规则？",
)
"""30 questions about cars, tax, programming, sports, money, travel, cooking, law and school subjects: nothing the
classics cover."""
